"""mmer.realtime"""
