"""How the report's parts write a number: fixed digits, and a dash for a value not measured."""


def number(value, digits: int = 1, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{suffix}"
