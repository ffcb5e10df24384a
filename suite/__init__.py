"""cgspn-bench harness: scenarios, measurement, runner, profiling, reports, gates, distillation."""
