"""Chips to tiles, splits and folds; a user's own datamodule; storage every node reaches."""
