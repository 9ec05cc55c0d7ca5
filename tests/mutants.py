"""Mutation check of the algorithm tests: break one defining property of an algorithm at a time (in a copy of
the code) and run the test that should catch it. Every mutant must be caught (docs/verification.md).

    .venv/bin/python tests/mutants.py [NAME-SUBSTRING...]
"""
import pathlib
import shutil
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
A = "toolkit/stages/dg/algorithms.py"; S = "toolkit/stages/cl/strategies.py"; SW = "toolkit/stages/dg/swad.py"
AD = "toolkit/learn/adapters.py"
M = [
 ("GroupDRO q without exp", A, 'self.q[m] *= (self.hparams["groupdro_eta"] * losses[m].data).exp()', 'self.q[m] *= (self.hparams["groupdro_eta"] * losses[m].data)', "tests/test_dg_algorithms.py::test_groupdro_reweights_environments_by_the_exponentiated_loss"),
 ("GroupDRO loss = mean", A, 'loss = torch.dot(losses, self.q)', 'loss = losses.mean()', "tests/test_dg_algorithms.py::test_groupdro_reweights_environments_by_the_exponentiated_loss"),
 ("IRM anneal off by one", A, 'if count >= self.hparams["irm_penalty_anneal_iters"]', 'if count > self.hparams["irm_penalty_anneal_iters"]', "tests/test_dg_algorithms.py::test_irm_loss_is_nll_plus_the_annealed_penalty"),
 ("VREx unbiased variance", A, 'penalty = ((losses - mean) ** 2).mean()', 'penalty = losses.var()', "tests/test_dg_algorithms.py::test_vrex_penalty_is_the_variance_of_environment_risks_and_anneals"),
 ("CDANN unconditioned", A, 'disc_input = all_z + self.class_embeddings(all_y)', 'disc_input = all_z', "tests/test_dg_algorithms.py::test_cdann_conditions_the_discriminator_and_balances_classes"),
 ("CDANN unweighted", A, 'weights = 1.0 / (y_counts[all_y] * (all_y.max() + 1)).float()', 'weights = torch.ones_like(all_y, dtype=torch.float) / len(all_y)', "tests/test_dg_algorithms.py::test_cdann_conditions_the_discriminator_and_balances_classes"),
 ("LwF PyCIL KD x1", S, 'return ce + alpha * pycil_kd(outputs[:, old], self.old_logits(x)[:, old], T)', 'return ce + pycil_kd(outputs[:, old], self.old_logits(x)[:, old], T)', "tests/test_cl.py::test_lwf_is_pycils_new_class_ce_plus_three_times_its_kd"),
 ("LwF CE on all classes", S, 'ce = F.cross_entropy(outputs[:, self.new_cols], self.new_position[y])', 'ce = F.cross_entropy(self.masked(outputs), y)', "tests/test_cl.py::test_lwf_is_pycils_new_class_ce_plus_three_times_its_kd"),
 ("EWC Fisher unweighted", S, 'w = prob.float() if mammoth else', 'w = torch.ones_like(prob, dtype=torch.float32) if mammoth else', "tests/test_cl.py::test_ewc_fisher_is_mammoths_by_default_and_the_empirical_one_on_request"),
 ("DER++ no beta CE", S, 'return loss + self.hp["beta"] * F.cross_entropy(self.masked(self.net(bx)), by)', 'return loss', "tests/test_cl.py::test_der_adds_the_logit_mse_on_the_buffer_and_derpp_the_label_ce"),
 ("DER MSE x2", S, 'return self.hp["alpha"] * F.mse_loss(self.net(bx), blogits)', 'return 2 * self.hp["alpha"] * F.mse_loss(self.net(bx), blogits)', "tests/test_cl.py::test_der_adds_the_logit_mse_on_the_buffer_and_derpp_the_label_ce"),
 ("gdumb no restart", S, 'self.net.load_state_dict(self.initial.state_dict())', 'pass', "tests/test_cl.py::test_gdumb_memory_is_class_balanced_and_each_task_restarts_from_the_initial_weights"),
 ("FSA backbone not frozen", S, '''        if task == 0:
            for p in self.net.parameters():
                p.requires_grad_(False)''', '''        if task == 0:
            pass''', "tests/test_cl.py::test_fsa_adapts_the_backbone_on_the_first_task_only"),
 ("RanPAC adapter after norm2", AD, 'return self.mlp(self.norm(x)) + self.adapter(x)', 'return self.mlp(self.norm(x)) + self.adapter(self.norm(x))', "tests/test_cl.py::test_ranpac_adapters_are_adaptformer_parallel_branches_in_a_frozen_vit"),
 ("RanPAC SSF without shift", AD, '            return x * self.scale + self.shift', '            return x * self.scale', "tests/test_cl.py::test_ranpac_ssf_scales_and_shifts_after_each_op_as_its_forward_does"),
 ("RanPAC VPT prompts kept", AD, '        return self.block(x)[:, :n]', '        return self.block(x)[:, -n:]', "tests/test_cl.py::test_ranpac_vpt_deep_prompts_each_block_and_drops_them_after"),
 ("RanPAC cosine per step", S, 'min(self.current_step // spe, epochs)', 'min(self.current_step, epochs)', "tests/test_cl.py::test_fsa_first_session_is_ranpacs_on_a_vit"),
 ("replay quota +1", S, 'per_class = max(1, self.hp["memory"] // seen)', 'per_class = max(1, self.hp["memory"] // seen + 1)', "tests/test_cl.py::test_replay_memory_keeps_an_equal_quota_per_seen_class"),
 ("herding argmax", S, 'j = int(scores.argmin())', 'j = int(scores.argmax())', "tests/test_cl.py::test_icarl_classifies_by_the_nearest_mean_of_exemplars_chosen_by_herding"),
 ("SWAD BN exponential average", SW, "        module.momentum = None\n", "        pass\n", "tests/test_dg.py::test_swad_re_estimates_batchnorm_statistics_as_a_cumulative_average"),
]


WORKERS = 2  # two copies of the code, a mutant test running in each: the suite's slow part is pytest's start-up


def _check(root: pathlib.Path, mutant) -> str:
    name, f, old, new, test = mutant
    p = root / f
    orig = p.read_text()
    if orig.count(old) != 1:
        return f"MISSED {name}: its pattern is found {orig.count(old)} times (the code moved)"
    p.write_text(orig.replace(old, new))
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test], cwd=root,
                           capture_output=True, text=True, timeout=900)
    finally:
        p.write_text(orig)
    caught = r.returncode == 1  # tests failed; 2-5 would be a broken run (collection, usage), not a catch
    return f"{'caught' if caught else 'MISSED'}: {name} ({test.split('::')[1]})"


def main() -> int:
    import queue
    import threading

    only = sys.argv[1:]
    todo = [m for m in M if not only or any(o in m[0] for o in only)]
    base = pathlib.Path(tempfile.mkdtemp(prefix="augur-mutants-"))
    roots = [base / f"repo{i}" for i in range(min(WORKERS, len(todo)) or 1)]
    for root in roots:  # each worker mutates its own copy: a mutant never leaks into another's test
        shutil.copytree(REPO, root, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "__pycache__", ".pytest_cache"))
    work: queue.Queue = queue.Queue()
    for m in todo:
        work.put(m)
    lines: list[str] = []
    lock = threading.Lock()

    def worker(root: pathlib.Path) -> None:
        while True:
            try:
                m = work.get_nowait()
            except queue.Empty:
                return
            line = _check(root, m)
            with lock:
                lines.append(line)
                print(line, flush=True)

    threads = [threading.Thread(target=worker, args=(r,)) for r in roots]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shutil.rmtree(base, ignore_errors=True)
    missed = sum(not line.startswith("caught: ") for line in lines) + len(todo) - len(lines)
    print(f"{missed} missed")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
