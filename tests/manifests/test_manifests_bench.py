"""The store benchmark runs end to end at a small size and prints every row (figures are not asserted)."""

from manifests.bench import main


def test_the_store_bench_prints_its_table(capsys):
    main(["--records", "150"])
    out = capsys.readouterr().out
    for row in (
        "mcc plan of 150 records",
        "index up to date",
        "records rewritten",
        "with no index",
        "dedupe index over 150 images",
    ):
        assert row in out
