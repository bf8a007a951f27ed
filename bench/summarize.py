"""Summarises a raw pytest-benchmark JSON file (kept under build/) into the committed results: the median time of
`sdtp` and of `reference` for every benchmark group, their ratio, the machine and the date; prints it as a Markdown
table.

    python bench/summarize.py build/bench/ops-cpu-raw.json --out bench/results/ops-cpu.json
"""
import argparse
import json
import os
from collections import defaultdict


def ratios(data: dict) -> list[dict]:
    groups = defaultdict(dict)
    for bench in data["benchmarks"]:
        groups[bench["group"]][bench["params"]["impl"]] = bench["stats"]["median"]
    return [
        {"group": g, "sdtp_s": t["sdtp"], "reference_s": t["reference"], "speedup": t["reference"] / t["sdtp"]}
        for g, t in groups.items()
        if {"sdtp", "reference"} <= t.keys()
    ]


def summary(data: dict) -> dict:
    machine = data.get("machine_info", {})
    return {
        "ratios": ratios(data),
        "statistic": "median of the timed rounds (pytest-benchmark)",
        "machine": {key: machine.get(key) for key in ("processor", "machine", "python_version", "system", "release")}
        | {"cpu": machine.get("cpu", {}).get("brand_raw"), "cores": machine.get("cpu", {}).get("count")},
        "datetime": data.get("datetime"),
        "pytest_benchmark": data.get("version"),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("raw", help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("--out", default=None, help="summary JSON written here (default: print only)")
    args = parser.parse_args(argv)
    with open(args.raw) as f:
        result = summary(json.load(f))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    print("| benchmark | sdtp (ms) | reference (ms) | speed-up |\n|---|---:|---:|---:|")
    for r in result["ratios"]:
        print(f"| {r['group']} | {r['sdtp_s'] * 1e3:.2f} | {r['reference_s'] * 1e3:.2f} | {r['speedup']:.2f}x |")


if __name__ == "__main__":
    main()
