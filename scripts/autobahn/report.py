#!/usr/bin/env python3
"""Helper for scripts/autobahn.sh (Python 3, standard library only).

  report.py spec --cases-file F --set full|smoke --outdir D --agent A --url U [--hostname H]
      Prints the fuzzingclient spec (JSON) for one server. With --hostname (a wss:// URL),
      the fuzzingclient verifies the server's certificate for H against OpenSSL's default
      trust (SSL_CERT_FILE when set) and sends H as SNI unless it is an IP address;
      without it, a wss:// server's certificate is not verified at all.

  report.py compare [--skipped MODE]... [--markdown FILE] direct=DIR MODE=DIR...
      Reads DIR/index.json of every run, prints a per-mode summary table and every case
      whose `behavior` differs from the first run's (the direct baseline). Exit status 1 if
      any case is FAILED in any run, any case differs from the baseline, or a case is
      missing from a run; 0 otherwise. Skipped modes are listed as such, never as passing.
"""

import argparse
import json
import os
import sys

BEHAVIORS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]


def case_key(case_id):
    """Sort "9.10.2" after "9.2.1" (numeric, not lexical)."""
    return [int(p) if p.isdigit() else p for p in case_id.split(".")]


def cmd_spec(args):
    with open(args.cases_file) as f:
        sets = json.load(f)
    chosen = sets[args.set]
    server = {"agent": args.agent, "url": args.url}
    if args.hostname:
        server["hostname"] = args.hostname
    spec = {
        "outdir": args.outdir,
        "servers": [server],
        "cases": chosen["cases"],
        "exclude-cases": chosen.get("exclude-cases", []),
        "exclude-agent-cases": {},
    }
    json.dump(spec, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def load_run(outdir):
    """Returns {case_id: result} of the single agent in outdir/index.json."""
    path = os.path.join(outdir, "index.json")
    with open(path) as f:
        index = json.load(f)
    if len(index) != 1:
        raise SystemExit("%s: expected results of exactly one agent, found %d" % (path, len(index)))
    (results,) = index.values()
    return results


def cmd_compare(args):
    runs = []  # (mode, {case: result})
    for item in args.runs:
        mode, _, outdir = item.partition("=")
        if not outdir:
            raise SystemExit("compare: expected MODE=DIR, got %r" % item)
        runs.append((mode, load_run(outdir)))
    base_mode, base = runs[0]

    problems = 0
    lines = []
    out = lines.append

    # Summary table: one row per run, counts per behaviour.
    header = "| mode | cases | " + " | ".join(BEHAVIORS) + " | differs from %s | verdict |" % base_mode
    out(header)
    out("|" + "---|" * (len(BEHAVIORS) + 4))
    diffs = {}  # mode -> [(case, base_result, result)]
    for mode, results in runs:
        counts = {b: 0 for b in BEHAVIORS}
        for r in results.values():
            counts[r["behavior"]] = counts.get(r["behavior"], 0) + 1
        differing = []
        if mode != base_mode:
            for case in sorted(set(base) | set(results), key=case_key):
                b, r = base.get(case), results.get(case)
                if b is None or r is None or b["behavior"] != r["behavior"]:
                    differing.append((case, b, r))
        diffs[mode] = differing
        failed = counts.get("FAILED", 0)
        if mode in args.endpoint:
            # An endpoint of its own (the echo function), not a relay: it must pass every
            # case; being stricter or laxer than the baseline server is no fault.
            missing = [c for c, b, r in differing if r is None]
            verdict = "PASS" if failed == 0 and not missing else "FAIL"
        else:
            verdict = "PASS" if failed == 0 and not differing else "FAIL"
        if verdict == "FAIL":
            problems += 1
        out("| %s | %d | %s | %s | %s |" % (
            mode, len(results), " | ".join(str(counts.get(b, 0)) for b in BEHAVIORS),
            "-" if mode == base_mode else len(differing), verdict))
    for mode in args.skipped:
        out("| %s | - | %s | - | SKIPPED (not supported by this build; not a pass) |" % (
            mode, " | ".join("-" for _ in BEHAVIORS)))

    # Every non-OK case of the baseline, so the reader sees what "NON-STRICT" etc. are.
    notable = [(c, r) for c, r in sorted(base.items(), key=lambda kv: case_key(kv[0]))
               if r["behavior"] != "OK"]
    if notable:
        out("")
        out("Cases not OK in the %s run: %s" % (base_mode, ", ".join(
            "%s %s" % (c, r["behavior"]) for c, r in notable)))

    for mode, results in runs:
        failed = [c for c, r in sorted(results.items(), key=lambda kv: case_key(kv[0]))
                  if r["behavior"] == "FAILED"]
        if failed:
            out("")
            out("FAILED in %s: %s" % (mode, ", ".join(failed)))
    for mode, differing in diffs.items():
        if not differing:
            continue
        out("")
        out("Cases where %s differs from %s (behavior / behaviorClose):" % (mode, base_mode))
        for case, b, r in differing:
            def show(x):
                return "missing" if x is None else "%s / %s" % (x["behavior"], x.get("behaviorClose"))
            out("  %-8s %s: %s   %s: %s" % (case, base_mode, show(b), mode, show(r)))

    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    return 1 if problems else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("spec")
    s.add_argument("--cases-file", required=True)
    s.add_argument("--set", required=True, choices=["full", "smoke"])
    s.add_argument("--outdir", required=True)
    s.add_argument("--agent", required=True)
    s.add_argument("--url", required=True)
    s.add_argument("--hostname", help="wss://: the name (or IP address) the certificate must be valid for")
    c = sub.add_parser("compare")
    c.add_argument("--skipped", action="append", default=[])
    c.add_argument("--endpoint", action="append", default=[],
                   help="a run of an endpoint (not a relay): differences are listed, not failures")
    c.add_argument("--markdown")
    c.add_argument("runs", nargs="+", metavar="MODE=DIR")
    args = p.parse_args()
    return cmd_spec(args) if args.cmd == "spec" else cmd_compare(args)


if __name__ == "__main__":
    sys.exit(main())
