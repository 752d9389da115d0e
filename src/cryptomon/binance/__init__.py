"""What Binance defines, once: its limits (`limits`), its payloads and their bounds (`schema`), its stream
names (`streams`). Every stage reads the exchange's protocol from here and from nowhere else."""
