"""`make demo`: the streaming system end to end on embedded defaults, and its run report."""
