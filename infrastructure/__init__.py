"""CDK infrastructure of runly: one stack (`stack.RunlyStack`) composing one construct per capability."""
