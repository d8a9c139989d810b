"""Datasets on the worker side: files read and checked row by row, rows -> token ids and labels, chat
templates, and a file's description for the web."""
