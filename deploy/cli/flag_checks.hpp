#pragma once
// Range checks for numeric flags. CLI11's PositiveNumber and NonNegativeNumber
// compare as double and print their bounds with std::to_string, so
// `--max-tokens 0` was answered with "not in range 0.000000 to 1797…" and 300
// digits; these name the flag, the value and what is accepted in one line:
// `--max-tokens: '0' is not an integer >= 1`. Checks made after parsing, that
// need a model or a device, word their messages the same way (bad_flag).

#include <CLI/CLI.hpp>

#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace orrery::deploy {

/// `'VALUE' PROBLEM`: what follows `FLAG: ` in every message about a flag's
/// value (CLI11 writes the `FLAG: ` of a failed check itself).
inline std::string flag_value_problem(const std::string& value, const std::string& problem) {
  return "'" + value + "' " + problem;
}

/// `FLAG: 'VALUE' PROBLEM`, for a value the checks below cannot judge alone:
/// `--dtype: 'fp16' is not supported on cpu …`.
inline std::invalid_argument bad_flag(const std::string& flag, const std::string& value, const std::string& problem) {
  return std::invalid_argument(flag + ": " + flag_value_problem(value, problem));
}

/// Accepts a T from `low` (excluded unless `low_included`) to `high`
/// (included; unbounded when empty). Also rejects what is not a T at all:
/// an empty string, which CLI11 reads as 0, and a negative number for an
/// unsigned T, which it wraps (`--seed -1` was seed 18446744073709551615).
template <class T>
CLI::Validator in_interval(T low, std::optional<T> high, bool low_included = true) {
  auto text = [](T value) {
    std::ostringstream out;
    out << +value;  // `+`: an 8-bit integer prints as a number
    return out.str();
  };
  std::string accepted = high ? std::string(low_included ? "[" : "(") + text(low) + ", " + text(*high) + "]"
                              : std::string(low_included ? ">= " : "> ") + text(low);
  std::string kind = std::is_integral_v<T> ? "an integer " : "a number ";
  auto check = [=](std::string& input) -> std::string {
    T value{};
    bool valid = !input.empty() && (std::is_signed_v<T> || input.front() != '-') &&
                 CLI::detail::lexical_cast(input, value) &&
                 (low_included ? value >= low : value > low) && (!high || value <= *high);
    return valid ? std::string() : flag_value_problem(input, "is not " + kind + (high ? "in " : "") + accepted);
  };
  return CLI::Validator(check, accepted);
}

/// `>= low`: counts, sizes, seeds, seconds that may be zero.
template <class T>
CLI::Validator at_least(T low) {
  return in_interval<T>(low, std::nullopt);
}

/// `> low`: durations and factors that must not be zero.
template <class T>
CLI::Validator above(T low) {
  return in_interval<T>(low, std::nullopt, false);
}

/// `[low, high]`.
template <class T>
CLI::Validator between(T low, T high) {
  return in_interval<T>(low, high);
}

}  // namespace orrery::deploy
