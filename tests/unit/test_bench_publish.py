from datetime import datetime, timezone

import pytest

from tests.bench.publish import END, START, published

PAGE = f"# Benchmarks\n\nwhat each key means\n\n## Latest full run\n\n{START}\n_Not generated yet._\n{END}\n\nafter\n"


def test_the_run_replaces_only_the_marked_section():
    table = "| key | value | goal |\n| --- | ---: | --- |\n| datafied_eps | 3,665 | |\n"
    page = published(PAGE, table, datetime(2026, 12, 6, tzinfo=timezone.utc), "2 CPUs")
    assert page.startswith("# Benchmarks\n\nwhat each key means\n") and page.endswith(f"{END}\n\nafter\n")
    assert "Not generated yet" not in page and "| datafied_eps | 3,665 | |" in page and "Run on 2026-12-06 (2 CPUs)." in page
    assert published(page, table, datetime(2026, 12, 6, tzinfo=timezone.utc), "2 CPUs") == page  # idempotent


def test_a_page_without_the_markers_is_refused():
    with pytest.raises(ValueError, match="needs one"):
        published("# Benchmarks\n", "| a |", datetime.now(timezone.utc), "x")
