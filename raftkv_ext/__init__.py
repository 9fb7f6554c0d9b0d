"""Native parts of raftkv: the log entry type, the binary codec and the segment log."""
