from __future__ import annotations

import pytest

from jobs.lib.session import get_spark


@pytest.fixture(scope="session")
def spark():
    session = get_spark(
        "pinsage-tests",
        "local[2]",
        {
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.shuffle.partitions": "4",
            "spark.default.parallelism": "2",
            "spark.driver.memory": "2g",
        },
    )
    yield session
    session.stop()
