"""Multi-task training strategies: loss weighting, gradient methods, sharing, alternating and staged training."""
