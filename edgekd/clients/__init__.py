"""edgekd ClientApps."""
