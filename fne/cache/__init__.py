"""The activation cache: stores on local or fsspec filesystems, and which store holds which rows."""
