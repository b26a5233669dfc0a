"""A python3 computation over a large dict, checkpointed in the middle.

Builds a dict of 300k entries, prints READY, then keeps updating and summing
it in rounds (checking for the go file between rounds). After go it finishes
the remaining rounds and compares the result with the closed form: any lost
or repeated round, or damaged memory, gives FAIL.
"""
import os
import sys

work = sys.argv[1]
N = 300_000
ROUNDS_AFTER_GO = 5
d = {f"key-{i}": i for i in range(N)}
print("READY", flush=True)
rounds = 0
while True:
    for k in d:
        d[k] += 1
    rounds += 1
    if os.path.exists(os.path.join(work, "go")):
        break
for _ in range(ROUNDS_AFTER_GO):
    for k in d:
        d[k] += 1
    rounds += 1
total = sum(d.values())
expected = N * (N - 1) // 2 + N * rounds
print(f"rounds {rounds} total {total} expected {expected}")
print("PASS" if total == expected and len(d) == N else "FAIL (mismatch)", flush=True)
