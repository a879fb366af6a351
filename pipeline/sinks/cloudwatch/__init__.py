"""Everything CloudWatch Logs, in one place, as Vector keeps one folder per sink: its limits, stream
names and request bodies (`limits`, pure), batches filled across a pod's objects (`filling`, pure), the
puts in flight and their settlement (`inflight`), and the sink that sends one batch (`sink`)."""
