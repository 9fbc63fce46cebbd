"""ovr-eval: benchmarks, scoring, reports and behaviour rates against an OpenAI-compatible endpoint."""
