"""Benchmarks of wofn's hot paths against the way common tools do the same work (`make bench`)."""
