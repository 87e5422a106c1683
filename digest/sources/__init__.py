"""Sources: feeds and the supplier directory, each reporting its problems instead of failing the issue."""
