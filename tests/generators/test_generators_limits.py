"""Which per-host limit the scrape's progress bar names (``generators.web.limits``)."""

from generators.download import DownloadConfig
from generators.sources import Candidate
from generators.web.limits import HostLimits
from manifests import load_groups

GROUP = "lemon-lime"
GROUPS = {g.id: g for g in load_groups()}


def records(**per_host: int):
    return [
        Candidate(f"http://{host}/{n}.jpg", GROUP, "CC0").to_record(GROUPS[GROUP])
        for host, count in per_host.items()
        for n in range(count)
    ]


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_host_served_at_its_rate_limit_is_named_rate_bound():
    clock = Clock()
    todo = records(**{"a.example": 40, "b.example": 40})
    limits = HostLimits(todo, DownloadConfig(per_host_rate=2.0, per_host_connections=8), 32, clock)
    for index, record in enumerate(r for r in todo if "a.example" in r.source.url):
        if index == 10:
            break
        clock.now += 0.5  # a.example: 2 finished a second, its rate limit
        limits.finished(record)
    # b.example, not served yet, has more URLs left than its 8 connections can take at once
    assert limits.describe() == "b.example: 8 connections (0/s); a.example: rate 2/s"


def test_a_host_with_most_urls_left_is_named_connection_bound():
    clock = Clock()
    todo = records(**{"big.example": 90, "small.example": 10})
    limits = HostLimits(todo, DownloadConfig(per_host_rate=0, per_host_connections=8), 64, clock)
    clock.now += 1.0
    limits.finished(todo[0])
    assert limits.describe() == "big.example: 8 connections (1/s)"


def test_no_limit_named_when_none_binds():
    clock = Clock()
    even = records(**{f"h{n}.example": 5 for n in range(20)})  # 100 URLs on 20 hosts, 5 each
    limits = HostLimits(even, DownloadConfig(per_host_rate=5.0, per_host_connections=8), 64, clock)
    clock.now += 1.0
    limits.finished(even[0])
    assert limits.describe() == ""  # under the rate, fewer URLs left per host than connections
    one_connection_each = HostLimits(
        even, DownloadConfig(per_host_rate=0, per_host_connections=64), 64, clock
    )
    assert one_connection_each.describe() == ""  # per-host connections = all downloads in flight


def test_the_scrape_feeds_the_limits_to_a_progress_bar_that_shows_them(tmp_path):
    """``scrape`` hands ``describe`` to the bar and counts every stored record into it."""
    from generators_testserver import Route, encode, pattern_image, serve

    from generators.web import ScrapeJob, scrape
    from manifests import ManifestStore

    class Bar:
        def __init__(self):
            self.detail, self.records, self.total = None, [], None

        def show_detail(self, describe):
            self.detail = describe

        def start(self, total):
            self.total = total

        def __call__(self, record):
            self.records.append(record.id)

    routes = {f"/{n}.jpg": Route(encode(pattern_image(n), "JPEG")) for n in range(3)}
    with serve(routes) as server:
        urls = tmp_path / "urls.csv"
        urls.write_text("url,group,licence\n" + "".join(f"{server.url(p)},{GROUP},CC0\n" for p in routes))
        download = DownloadConfig(allow_private_networks=True, per_host_rate=0)
        job = ScrapeJob(urls=str(urls), processes=0, download=download)
        bar = Bar()
        scrape(job, ManifestStore(tmp_path / "work"), progress=bar)
    assert bar.total == 3 and len(bar.records) == 3
    assert bar.detail.__self__.left == {"127.0.0.1": 0}  # every stored record reached the limits
