"""User labels of a service (issue 13 item 2, decision 73): `labels` are set on every
container of the service (what Compose's `labels:` and Swarm's container labels do);
`service_labels` are the service's own metadata (Compose's `deploy.labels`), shown by
`service inspect` and `service ls -o json`, never on a container.

A key is 1 to 255 of letters, digits, '.', '-', '_' and '/', starting and ending with a
letter or digit (what reverse-DNS keys such as `com.example.team` and
`traefik.http.routers.web.rule` use); a value at most 4096 characters. At most 64 of
each. The prefix `io.shoal.` belongs to shoal: its containers' labels under it are what
the agent adopts a container by, so a user label there is refused rather than let it
collide with (or be mistaken for) one of them.

`labels` are part of the template hash (changing one rolls the replicas, as Swarm's
`--container-label-add` does); `service_labels` are not (`NOT_IN_TEMPLATE`). Both None
when left out, so a spec without them keeps its stored form and its hash.

Pure: imports no grpc, docker or etcd.
"""

import re
from typing import Annotated

from pydantic import AfterValidator, Field

from node.model.spec_resources import _fail

LABEL_KEY_PATTERN = r"[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?"
RESERVED_PREFIX = "io.shoal."
MAX_LABELS = 64


def _key(v: str) -> str:
    if not re.fullmatch(LABEL_KEY_PATTERN, v) or len(v) > 255:
        raise _fail(
            "a label key is 1 to 255 of letters, digits, '.', '-', '_', '/', starting and ending "
            f"with a letter or digit (e.g. com.example.team), got {v[:60]!r}"
        )
    if v.lower().startswith(RESERVED_PREFIX):
        raise _fail(
            f"the prefix {RESERVED_PREFIX!r} is shoal's own (the labels it finds its containers by); "
            f"choose another, e.g. com.example.{v[len(RESERVED_PREFIX) :][:40]}"
        )
    return v


LabelKey = Annotated[str, AfterValidator(_key)]
Labels = Annotated[dict[LabelKey, Annotated[str, Field(max_length=4096)]], Field(max_length=MAX_LABELS)]
