"""The planted-signal simulation behind `msctr prepare synthetic`: `params` (the click model's
constants and drawn parameters), `world` (users, items, the impressions' timeline), `clicks`
(the logit terms and the clicks, `simulate`), `structures` (one paper's planted mechanism
structure). `msctr.data.sources.synthetic` turns a simulation into the dataset's frame;
`msctr.evaluate.bayes` scores its true probabilities."""
