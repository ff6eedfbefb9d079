"""How big: parameter counts on the meta device, the analytic memory estimate, the CPU accounting that measures it."""
