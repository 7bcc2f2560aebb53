"""The pieces of ``bench/run.py``: one module per figure, plus the shared harness.

Nothing here is imported by the agent; it drives the real agent, the real
kernel and real traffic between simulated pods (tests/support).
"""
