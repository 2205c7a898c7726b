"""mmer.export"""
