"""The Celery workers.

Arrow's allocator in worker processes is the system one, chosen here because it must be set
before pyarrow is first imported: mimalloc (Arrow's default) keeps what a Parquet row group
freed and grows over a file's first groups (171 MB against 118 MB after five 1M-token groups),
so a token-level build's peak memory grew with the number of groups it wrote. Set
ARROW_DEFAULT_MEMORY_POOL to choose another.
"""

import os

os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
