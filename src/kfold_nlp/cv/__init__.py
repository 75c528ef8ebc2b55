"""The K-fold runner: prepare, fit each fold, collect; parallel fold jobs, distillation, locks."""
