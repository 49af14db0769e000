-- Why fraud sent a payment to review (the reasons of its fraud.review, or screening_deadline):
-- shown on the payment and so in payment.requires_review. NULL: never sent to review.
ALTER TABLE payments ADD COLUMN review_reasons text[];
