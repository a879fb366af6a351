"""Where objects come from: the central bucket's listing for a window (`listing`, used by the replay and
the inventory) and one object's ETag and body (`s3`)."""
