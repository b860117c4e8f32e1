"""The benchmarks of the Qwen report's Table 2, each with the report's shot count and its subjects
(docs/qwen.md section 10); how each protocol prompts and scores them: protocol_*.py."""

from __future__ import annotations

from dataclasses import dataclass, replace

from megatron_qwen.config.errors import ConfigError

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions")
CEVAL_SUBJECTS = (
    "accountant", "advanced_mathematics", "art_studies", "basic_medicine", "business_administration",
    "chinese_language_and_literature", "civil_servant", "clinical_medicine", "college_chemistry", "college_economics",
    "college_physics", "college_programming", "computer_architecture", "computer_network", "discrete_mathematics",
    "education_science", "electrical_engineer", "environmental_impact_assessment_engineer", "fire_engineer",
    "high_school_biology", "high_school_chemistry", "high_school_chinese", "high_school_geography",
    "high_school_history", "high_school_mathematics", "high_school_physics", "high_school_politics",
    "ideological_and_moral_cultivation", "law", "legal_professional", "logic", "mao_zedong_thought", "marxism",
    "metrology_engineer", "middle_school_biology", "middle_school_chemistry", "middle_school_geography",
    "middle_school_history", "middle_school_mathematics", "middle_school_physics", "middle_school_politics",
    "modern_chinese_history", "operating_system", "physician", "plant_protection", "probability_and_statistics",
    "professional_tour_guide", "sports_science", "tax_accountant", "teacher_qualification",
    "urban_and_rural_planner", "veterinary_medicine")
# MATH's seven subject folders (Hendrycks' layout) and lm-eval's minerva_math task of each.
MATH_SUBJECTS = {"algebra": "algebra", "counting_and_probability": "counting_and_prob", "geometry": "geometry",
                 "intermediate_algebra": "intermediate_algebra", "number_theory": "num_theory",
                 "prealgebra": "prealgebra", "precalculus": "precalc"}
BBH_SUBJECTS = (
    "boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa", "dyck_languages",
    "formal_fallacies", "geometric_shapes", "hyperbaton", "logical_deduction_five_objects",
    "logical_deduction_seven_objects", "logical_deduction_three_objects", "movie_recommendation",
    "multistep_arithmetic_two", "navigate", "object_counting", "penguins_in_a_table",
    "reasoning_about_colored_objects", "ruin_names", "salient_translation_error_detection", "snarks",
    "sports_understanding", "temporal_sequences", "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects", "web_of_lies",
    "word_sorting")


@dataclass(frozen=True)
class Benchmark:
    name: str  # --tasks name, and the lm-eval group or task our configuration defines
    title: str  # as the report's table spells it
    shots: int  # the report's (Table 2)
    subjects: tuple[str, ...] = ()  # one lm-eval task per subject, aggregated into the group
    code: bool = False  # runs the model's code (needs --allow-code-execution)
    partial: bool = False  # some subjects only (--tasks mmlu:anatomy): no published number applies

    @property
    def lm_eval_name(self) -> str:
        """The lm-eval group (or single task) our configuration defines; prefixed, so lm-eval's own hub-reading
        tasks of the same name are never picked instead."""
        return f"qwen_{self.name}"

    def task_name(self, subject: str | None) -> str:
        return f"{self.lm_eval_name}_{subject}" if subject else self.lm_eval_name


BENCHMARKS = {b.name: b for b in (
    Benchmark("mmlu", "MMLU", 5, MMLU_SUBJECTS),
    Benchmark("ceval", "C-Eval", 5, CEVAL_SUBJECTS),
    Benchmark("gsm8k", "GSM8K", 8),
    Benchmark("math", "MATH", 4, tuple(MATH_SUBJECTS)),
    Benchmark("humaneval", "HumanEval", 0, code=True),
    Benchmark("mbpp", "MBPP", 3, code=True),
    Benchmark("bbh", "BBH", 3, BBH_SUBJECTS),
)}


def _one(spec: str) -> Benchmark:
    """A --tasks entry: a benchmark, or `benchmark:subject,subject` for some of its subjects."""
    name, _, subjects = spec.partition(":")
    if name not in BENCHMARKS:
        raise ConfigError(f"--tasks {spec}: unknown task; choose from {', '.join(BENCHMARKS)}")
    bench = BENCHMARKS[name]
    if not subjects:
        return bench
    chosen = tuple(subjects.split(","))
    unknown = [s for s in chosen if s not in bench.subjects]
    if unknown:
        raise ConfigError(f"--tasks {spec}: {name} has no subject {', '.join(unknown)}"
                          + (" (its subjects: docs/evaluation.md)" if bench.subjects else " (it has no subjects)"))
    return replace(bench, subjects=chosen, partial=True)


def select(specs: list[str]) -> list[Benchmark]:
    return [_one(s) for s in dict.fromkeys(specs)]
