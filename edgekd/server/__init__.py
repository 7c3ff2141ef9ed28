"""edgekd ServerApps."""
