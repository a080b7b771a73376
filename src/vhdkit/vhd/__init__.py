"""The VHD format layer: declarations (structs) and the reader (image)."""
