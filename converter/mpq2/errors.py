"""The converter's one error type: a problem with the user's input or options, reported as
`convert_mpq: error: ...` without a traceback, naming the file, the tensor and the fix."""


class ConvertError(Exception):
    pass
