"""``fleetmon dashboards``: regenerate grafana/dashboards/*.json from the builders in this package.

    fleetmon dashboards                 # write grafana/dashboards/<uid>.json
    fleetmon dashboards --check         # exit 1 if the committed JSON differs from the builders' output

The JSON is deterministic (sorted keys, panel ids assigned in order), so the committed files can be
compared byte for byte with a fresh build.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from fleetmon.dashboards.common import UID

ROOT = Path(__file__).resolve().parents[2]
OUTPUT_DIR = ROOT / "grafana" / "dashboards"
# dashboard key (UID) -> module with build() -> dashboard.Dashboard
MODULES = {
    "fleet": "fleetmon.dashboards.fleet",
    "customer": "fleetmon.dashboards.customer",
    "building": "fleetmon.dashboards.building",
    "model": "fleetmon.dashboards.model",
    "training": "fleetmon.dashboards.training",
    "versions": "fleetmon.dashboards.versions",
    "platform": "fleetmon.dashboards.platform_ops",
    "infrastructure": "fleetmon.dashboards.infrastructure",
}


def _assign_ids(panels: list[dict[str, Any]], next_id: int = 1) -> int:
    for panel in panels:
        panel["id"] = next_id
        next_id += 1
        next_id = _assign_ids(panel.get("panels") or [], next_id)
    return next_id


def build_all() -> dict[str, dict[str, Any]]:
    """{file name: dashboard JSON} for every dashboard."""
    out: dict[str, dict[str, Any]] = {}
    for key, module_name in MODULES.items():
        builder = importlib.import_module(module_name).build()
        doc = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
        _assign_ids(doc.get("panels") or [])
        if doc.get("uid") != UID[key]:
            raise ValueError(f"{module_name}: uid {doc.get('uid')!r}, expected {UID[key]!r}")
        out[f"{UID[key]}.json"] = doc
    return out


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fleetmon dashboards", description=__doc__.splitlines()[0])
    p.add_argument("--output-dir", type=Path, default=OUTPUT_DIR, help=f"default {OUTPUT_DIR}")
    p.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = p.parse_args(argv)
    built = {name: render(doc) for name, doc in build_all().items()}
    out: Path = args.output_dir
    if args.check:
        stale = [n for n, text in built.items() if not (out / n).exists() or (out / n).read_text() != text]
        extra = sorted(x.name for x in out.glob("*.json") if x.name not in built)
        for n in stale:
            print(
                f"fleetmon dashboards: {out / n} differs from the builders (run `fleetmon dashboards`)",
                file=sys.stderr,
            )
        for n in extra:
            print(f"fleetmon dashboards: {out / n} is not built by any module", file=sys.stderr)
        return 1 if stale or extra else 0
    out.mkdir(parents=True, exist_ok=True)
    for name, text in built.items():
        target = out / name
        if not target.exists() or target.read_text() != text:
            tmp = target.with_suffix(".json.tmp")
            tmp.write_text(text)
            tmp.replace(target)  # Grafana re-reads the directory: never show it a half-written file
            print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
