"""What runs inside a trial's process: Lightning fit, memory meter, fault guard (imports the model stack)."""
