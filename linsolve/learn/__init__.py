"""Learning: Ritz-vector training data, network architectures (torch), training loops and presets.

Nothing here knows which Krylov method consumes a trained model.
"""
