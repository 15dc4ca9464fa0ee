"""Reports: the analyze report."""
