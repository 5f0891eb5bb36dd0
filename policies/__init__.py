"""Scripted and learned navigation policies."""
