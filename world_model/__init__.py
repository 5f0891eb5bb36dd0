"""The world model: a miniature SANA-WM and its data pipeline."""
