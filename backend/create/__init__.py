"""Photo -> avatar: the ``create`` pipeline and the assembly of its results into the avatar contract."""
