"""mmer.training"""
