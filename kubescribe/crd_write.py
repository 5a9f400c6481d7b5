"""``python -m kubescribe.crd_write``: write the generated CRD to crds/ and the chart."""

from pathlib import Path

from kubescribe.crd import crd_yaml

TARGETS = ("crds/kubescribe.io_transcriptionrequests.yaml", "charts/kubescribe/crds/kubescribe.io_transcriptionrequests.yaml")


def main() -> None:
    root = Path.cwd()
    text = crd_yaml()
    for target in TARGETS:
        path = root / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
