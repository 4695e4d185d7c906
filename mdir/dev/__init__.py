"""Developer tooling that is not part of the library's runtime: fault drills (``drills``)."""
