"""The throwaway PostgreSQL server now lives in the test kit (tests/kit/pg.py, shared with
bench/); this name stays so that test modules importing `tests.pg` keep working."""

from tests.kit.pg import (
    ENV_URL as ENV_URL,
)
from tests.kit.pg import (
    PgCluster as PgCluster,
)
from tests.kit.pg import (
    PostgresMissing as PostgresMissing,
)
from tests.kit.pg import (
    drop_schema as drop_schema,
)
from tests.kit.pg import (
    fresh_schema as fresh_schema,
)
from tests.kit.pg import (
    pg_cluster as pg_cluster,
)
