"""Memory techniques: their settings (config), applying them (apply), bitsandbytes layers, quantize-while-loading."""
