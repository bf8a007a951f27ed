"""Prints the speed-up of `sdtp` over `reference` for every benchmark group of a pytest-benchmark JSON file, as a
Markdown table, and writes it back into the file under "ratios"."""
import json
import sys
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


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    data["ratios"] = ratios(data)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
    print("| benchmark | sdtp (ms) | reference (ms) | speed-up |\n|---|---:|---:|---:|")
    for r in data["ratios"]:
        print(f"| {r['group']} | {r['sdtp_s'] * 1e3:.2f} | {r['reference_s'] * 1e3:.2f} | {r['speedup']:.2f}x |")


if __name__ == "__main__":
    main(sys.argv[1])
