"""Local fakes of the boundaries this machine cannot reach (named, narrow: see each module)."""
