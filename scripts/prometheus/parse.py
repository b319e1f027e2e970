"""Parses a Prometheus text exposition (format 0.0.4) read from stdin with the reference
Python client's parser (`prometheus_client.parser`), and prints every sample as one JSON
object a line: {"name", "labels", "value"}. Exits 1 with the parser's error if the text is
not valid exposition format: the metrics test feeds it wsedge's whole /metrics body."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main() -> int:
    text = sys.stdin.read()
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                print(json.dumps({"name": sample.name, "labels": sample.labels, "value": sample.value}))
    except Exception as e:  # the parser raises ValueError and friends on malformed input
        print(f"not valid exposition format: {e!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
