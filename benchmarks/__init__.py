"""Speed and memory benchmarks of the regularisers (``python -m benchmarks.run``); never run by the tests."""
