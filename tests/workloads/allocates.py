"""Allocates many small Python objects for a few seconds: a memray capture that grows fast."""

import time

kept = []
end = time.time() + 4
while time.time() < end:
    kept.append([str(i) for i in range(1000)])
    if len(kept) > 200:
        kept.clear()
print("done allocating")
